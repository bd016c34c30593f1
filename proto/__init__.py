"""Protocol Buffers sources and their committed generated Python (`make proto`)."""
