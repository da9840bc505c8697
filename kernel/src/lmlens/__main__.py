from lmlens.cli import main

main()
