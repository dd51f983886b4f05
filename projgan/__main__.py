from projgan.cli import main

main()
