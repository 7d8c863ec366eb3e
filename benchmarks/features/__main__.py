from benchmarks.features.run import main

main()
