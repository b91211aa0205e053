"""Tests of consumer/: handlers and batches, the stream mechanics, the worker as a process, the ops commands."""
