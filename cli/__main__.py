from macprovider.cli.main import main

main()
