"""The application layer: the command line, config files, run directories, pictures and export."""
