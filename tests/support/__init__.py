"""Builders shared by the tests: the offline hub cache, real photos and sentences, fuzz cases, references,
tiny models under real architecture names."""
