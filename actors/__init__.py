"""Supervisor process: pykka actors and the pure decisions they call."""
