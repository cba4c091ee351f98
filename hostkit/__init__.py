"""What both programs do on the host: terminal output and errors, secrets from prompts or files."""
