"""Programs that embed metaops (not part of the installed package)."""
