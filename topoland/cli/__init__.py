"""The ``topoland`` command line: ``main`` parses arguments and calls the pipeline and the tools."""
