"""The demo: a simulated shop and its customers driving the real product end to end."""
