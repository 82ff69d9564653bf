"""runner endpoints: the fleet's runners, their drains and their GPUs' health."""
