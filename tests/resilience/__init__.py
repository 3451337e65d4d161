"""The fault matrix of issue 25: each test injects one fault into a real component."""
