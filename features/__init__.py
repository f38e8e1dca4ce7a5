"""The Feast feature repository (user and note window statistics) and the fast online writer."""
