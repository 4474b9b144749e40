"""Generated files: parsing them out of model answers and writing them safely."""
