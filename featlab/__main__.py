from featlab.cli import main

main()
