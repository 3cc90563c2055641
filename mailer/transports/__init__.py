"""Outbound channels: one small interface, errors mapped once at each boundary."""
