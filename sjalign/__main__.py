from sjalign.cli.app import main

main()
