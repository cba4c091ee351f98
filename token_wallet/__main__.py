from token_wallet.cli.main import main

main()
