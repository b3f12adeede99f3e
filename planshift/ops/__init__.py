"""What operators run: the local broker, dead letters and their re-drive, offset resets."""
