from macprovider.cli.launch import main

main()
