"""raytag: music audio auto-tagging at catalogue scale on Ray."""
