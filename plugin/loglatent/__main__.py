from loglatent.cli import main

main()
