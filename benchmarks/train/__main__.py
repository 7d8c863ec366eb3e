from benchmarks.train.run import main

main()
