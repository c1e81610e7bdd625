"""Word senses: disambiguation, same-sense occurrence search, sense induction."""
