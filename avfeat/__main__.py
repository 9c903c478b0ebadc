from avfeat.cli import main

main()
