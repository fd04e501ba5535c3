"""captioner's web service: POST a photo, get a caption."""
