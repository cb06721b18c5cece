"""The ``tundra`` command line: parse, call one core service, render."""
