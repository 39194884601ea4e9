"""What tuneloop shows a person: progress while it trains, tables when it is done."""
