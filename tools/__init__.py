"""Repository tools: generators and checks run by the Makefile (not shipped to Lambda)."""
