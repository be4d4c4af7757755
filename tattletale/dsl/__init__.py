"""The kernel language: types, builtins, decorators and the Python → IR front end."""
