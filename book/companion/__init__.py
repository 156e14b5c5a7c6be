"""The book's presentation layer: one module per chapter, language-neutral (numbers, verdicts,
tables, figures). Words come from book/<lang>/labels.yml, sentences from the pages."""
