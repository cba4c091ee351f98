from token_wallet.cli import main

main()
