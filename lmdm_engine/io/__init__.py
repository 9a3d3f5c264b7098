"""The engine's outside: presets, plugin chains, the Pedalboard-style effect, batch file processing, plots."""
