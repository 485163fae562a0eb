"""OpenAI's chat format as chat clients send it: messages and content parts, client housekeeping prompts, the
sources block that carries provenance in the message text, and the completion and chunk bodies."""
