# Shortcuts for the two README commands (bootstrap.sh installs what is missing first).
.PHONY: demo test

demo:
	./bootstrap.sh demo $(ARGS)

test:
	./bootstrap.sh test $(ARGS)
