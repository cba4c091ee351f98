"""Running a center: bootstrap, backup and restore, metrics and logs."""
