from versioner_grpc.server_cli import main

raise SystemExit(main())
