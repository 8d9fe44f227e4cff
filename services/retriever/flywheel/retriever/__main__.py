from flywheel.retriever.main import main

main()
