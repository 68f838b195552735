from bench.evaluate.runner import main

raise SystemExit(main())
