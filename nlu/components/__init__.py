"""Custom Rasa components for hailong's Vietnamese NLU."""
