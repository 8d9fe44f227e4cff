from flywheel.featurestore.main import main

main()
