"""Partitioning a teacher's final-layer filters across students (NoNN and the resilient method)."""
