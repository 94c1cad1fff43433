"""The compiler frontend (issue 12): import the float model with TVM's own frontend."""
