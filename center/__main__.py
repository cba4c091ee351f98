from center.cli.main import main

main()
