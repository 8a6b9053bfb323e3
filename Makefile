# Aliases for people used to make; dev.sh does the work (and needs no make).
.PHONY: setup demo test
setup:
	./dev.sh setup
demo:
	./dev.sh demo
test:
	./dev.sh test
