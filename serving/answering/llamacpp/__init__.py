"""llama.cpp, the embedded generator, in a supervised worker process of its own (see ``supervisor``)."""
