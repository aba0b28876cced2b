"""gemfs: the Gemini Files API as a folder on your disk (`gemfs mount`), and a local Files API
server that the google-genai SDK cannot tell from the real one (`gemfs serve`)."""

__version__ = "0.1.0"
