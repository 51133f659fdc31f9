// Dev environment. Deploy with:
//   az deployment group create --resource-group rg-chatft-dev --template-file infra/main.bicep --parameters infra/main.dev.bicepparam
using './main.bicep'

param baseName = 'chatftdev'

param location = 'eastus2'

param tags = {
  project: 'chatft'
  environment: 'dev'
}

// The Event Grid subscription to the retraining function needs its code published first (infra/README.md):
// deploy once, publish, then deploy again with CHATFT_RETRAIN_FUNCTION_DEPLOYED=true.
param retrainFunctionDeployed = bool(readEnvironmentVariable('CHATFT_RETRAIN_FUNCTION_DEPLOYED', 'false'))
