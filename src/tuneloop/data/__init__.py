"""Loading and checking user data, and splitting it for training and validation."""
