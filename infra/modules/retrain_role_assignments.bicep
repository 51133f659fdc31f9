// What the retraining function's identity may do: read the training data, run the Functions host on its own
// storage, and register assets and submit jobs in the workspace. Nothing else.

@description('Short name shared by every resource of this deployment; shown in the assignments\' description.')
param baseName string

@description('Principal (object) id of the retrain identity.')
param principalId string

@description('Name of the storage account that holds the training data.')
param trainingStorageName string

@description('Name of the function\'s own storage account.')
param functionStorageName string

@description('Name of the Azure ML workspace.')
param workspaceName string

// Built-in role definition ids: the same in every tenant.
var storageBlobDataReaderRoleId = '2a2b9908-6ea1-4ae2-8e65-a410df84e7d1'
var storageBlobDataOwnerRoleId = 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
var storageQueueDataContributorRoleId = '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
var storageTableDataContributorRoleId = '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
var azureMLDataScientistRoleId = 'f6c7c914-8db3-469d-8ca1-694a8f32e121'

resource trainingStorage 'Microsoft.Storage/storageAccounts@2024-01-01' existing = {
  name: trainingStorageName
}

resource functionStorage 'Microsoft.Storage/storageAccounts@2024-01-01' existing = {
  name: functionStorageName
}

resource workspace 'Microsoft.MachineLearningServices/workspaces@2025-09-01' existing = {
  name: workspaceName
}

// Download the new training data to fingerprint and register it.
resource blobReaderOnTrainingData 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(trainingStorage.id, principalId, storageBlobDataReaderRoleId)
  scope: trainingStorage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataReaderRoleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: '${baseName}: the retrain function reads training data'
  }
}

// The Functions host keeps leases in blobs and state in queues and tables of its own account (identity-based
// AzureWebJobsStorage), and Flex Consumption reads the code package from a container there.
resource blobOwnerOnFunctionStorage 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(functionStorage.id, principalId, storageBlobDataOwnerRoleId)
  scope: functionStorage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataOwnerRoleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: '${baseName}: Functions host state and code package'
  }
}

resource queueContributorOnFunctionStorage 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(functionStorage.id, principalId, storageQueueDataContributorRoleId)
  scope: functionStorage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageQueueDataContributorRoleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: '${baseName}: Functions host queues'
  }
}

resource tableContributorOnFunctionStorage 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(functionStorage.id, principalId, storageTableDataContributorRoleId)
  scope: functionStorage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageTableDataContributorRoleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: '${baseName}: Functions host tables'
  }
}

// Register data, environments and components and submit jobs; no compute or workspace changes.
resource dataScientistOnWorkspace 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(workspace.id, principalId, azureMLDataScientistRoleId)
  scope: workspace
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', azureMLDataScientistRoleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: '${baseName}: the retrain function registers data and submits the pipeline'
  }
}

output ids array = [
  blobReaderOnTrainingData.id
  blobOwnerOnFunctionStorage.id
  queueContributorOnFunctionStorage.id
  tableContributorOnFunctionStorage.id
  dataScientistOnWorkspace.id
]
