"""Clean sources: each reads one kind of input and feeds the engine (`mmdata.clean.engine`)."""
